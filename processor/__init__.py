"""The deployable function: `processor.app.lambda_handler` and the worked example."""
