"""Sources, the model manager and servable states. No TensorFlow here."""
