from densesearch.cli import main

main()
