from serving.request_logger.sink import main

main()
