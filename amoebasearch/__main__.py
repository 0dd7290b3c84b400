import sys

from amoebasearch.cli import main

sys.exit(main())
