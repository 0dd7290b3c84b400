import sys

from amoebasearch.entry import main

sys.exit(main())
