"""``python -m serving.gateway --config <gateway.json>``: the process serving.local starts."""

from serving.gateway.app import main

if __name__ == "__main__":
    main()
