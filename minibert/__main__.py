"""``python -m minibert`` runs the ``minibert`` command."""
import sys

from .cli import main

sys.exit(main())
