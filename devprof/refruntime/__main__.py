import sys

from devprof.runtimes.reference.runner import main

sys.exit(main())
