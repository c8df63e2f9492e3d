from akidb.cli import main

raise SystemExit(main())
