from arrows.cli import main

main()
