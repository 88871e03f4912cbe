"""Built-in methods. Importing this package registers every method with the registry."""
