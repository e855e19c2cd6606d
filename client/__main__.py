from client.cli import app

app()
