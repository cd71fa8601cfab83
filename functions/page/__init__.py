"""The live page: an HTML page and the JSON it polls, served by the Function App."""
