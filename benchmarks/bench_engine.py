"""Engine benchmark table (same as ``lovasz bench``); see :mod:`lovasz.bench` for what is measured."""

from lovasz.bench import main

if __name__ == "__main__":
    main()
