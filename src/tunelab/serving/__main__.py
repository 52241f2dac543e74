"""``python -m tunelab.serving MODEL [OPTIONS]``: ``tunelab serve`` without the CLI group."""

from tunelab.cli.serve import serve_main

if __name__ == "__main__":
    serve_main()
