from transplant.cli.commands import entry

entry()
