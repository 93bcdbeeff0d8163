"""`cascade-connector demo`: the whole product on one machine, and the accounting of a storm."""
