from distill.evaluate.cli import main

raise SystemExit(main())
