from devprof.cli import main

main()
