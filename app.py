"""Development entry: the same app object as wsgi.py (``python app.py`` serves it on :5000)."""

from wsgi import app

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
