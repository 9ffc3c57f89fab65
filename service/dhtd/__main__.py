import sys

from dhtd.cli import main

sys.exit(main())
