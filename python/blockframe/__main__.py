from blockframe.cli import main

raise SystemExit(main())
