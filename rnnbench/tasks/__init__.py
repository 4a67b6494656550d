"""Built-in task plugins, registered through the same ``register_tasks`` hook as third-party plugins."""
