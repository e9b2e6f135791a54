from transplant.cli.commands import main

main()
