"""python -m llamadoc"""

from llamadoc.cli.app import main

main()
