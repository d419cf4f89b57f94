import sys

from fedsqueeze.cli import main

sys.exit(main())
