"""Built-in tasks that run offline on CPU."""
