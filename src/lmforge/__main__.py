from lmforge.cli.main import console

raise SystemExit(console())
