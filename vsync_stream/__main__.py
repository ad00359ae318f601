"""``python -m vsync_stream`` runs the ``vsync-stream`` command."""

from vsync_stream.cli import main

main()
