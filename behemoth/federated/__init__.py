"""Federated learning on Flower: partitions, a ClientApp that trains with behemoth's loop, a ServerApp
running Flower's strategies (robust ones, DP wrappers), simulation and loopback deployment, checkpoints.

Import the pieces from their modules (behemoth.federated.partition, .server_app, ...): importing this
package loads neither torch nor flwr, so `behemoth --help` and config loading stay fast.
"""
