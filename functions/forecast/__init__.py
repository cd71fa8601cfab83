"""The forecast stream: each stored bar's next-minute forecast, published to the ``stock_forecasts`` hub."""
