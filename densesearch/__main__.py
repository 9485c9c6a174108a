from densesearch.cli.app import main

main()
