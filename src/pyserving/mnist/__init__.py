"""The TensorFlow Serving MNIST tutorial: data loading, export, client and CLI."""
