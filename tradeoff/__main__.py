import sys

from tradeoff.commands import main

sys.exit(main())
