from merging.cli import main

raise SystemExit(main())
