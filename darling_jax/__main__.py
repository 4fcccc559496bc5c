import sys

from darling_jax.cli.main import main

sys.exit(main())
