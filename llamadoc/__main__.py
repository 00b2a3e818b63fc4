"""python -m llamadoc"""

from llamadoc.cli import main

main()
