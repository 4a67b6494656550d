"""Built-in cell plugins, registered through the same ``register_cells`` hook as third-party plugins."""
