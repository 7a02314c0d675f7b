"""The HTTP face of Hounsfield: FastAPI app, users and roles, console, OHIF mount."""
