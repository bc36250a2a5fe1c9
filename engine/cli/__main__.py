"""python -m stagecoach.engine.cli"""

from stagecoach.engine.cli import main

main()
