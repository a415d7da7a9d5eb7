from swapwatch.cli import main

raise SystemExit(main())
