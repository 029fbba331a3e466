"""``python -m mtl_tutorial.bench``: the benchmarks' command line (``mtl-tutorial bench``)."""

from mtl_tutorial.bench import main

raise SystemExit(main())
