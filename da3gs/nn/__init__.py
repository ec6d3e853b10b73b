"""Neural-network building blocks shared by the backbone and the heads."""
