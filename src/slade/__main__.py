from slade.cli import main

main()
