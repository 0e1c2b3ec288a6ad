"""`python -m cli <command> ...`: the `accordion` command without the installed script (what
`ray job submit ... -- python -m cli train --config ...` runs in the job's working directory)."""
import sys

from cli import main

sys.exit(main())
