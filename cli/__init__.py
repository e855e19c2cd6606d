"""The `modelplane` command line, built on the SDK (`client`). Commands that run or act on a
server locally (`up`, `server`, `migrate`, `worker`, `stack`, offline key minting) import the
server packages only when run."""
