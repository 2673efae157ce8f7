from distill.encode.cli import main

raise SystemExit(main())
