from transplant.cli.main import main

main()
