"""Timer orchestration: submit the training job, roll the champion out to the endpoint."""
