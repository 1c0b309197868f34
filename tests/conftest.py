"""The suite imports the project as installed (`pip install -e .`): only through `dynvm`."""
