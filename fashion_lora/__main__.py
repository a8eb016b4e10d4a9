"""`python -m fashion_lora ...`: see fashion_lora.cli."""

from .cli import main

raise SystemExit(main())
