import sys

from nmrl.cli import main

sys.exit(main())
