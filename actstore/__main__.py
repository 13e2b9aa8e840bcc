"""`python -m actstore ...` is the `actstore` command."""

import sys

from actstore.shell.main import main

sys.exit(main())
