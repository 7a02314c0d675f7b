from hounsfield.cli.main import app

app()
