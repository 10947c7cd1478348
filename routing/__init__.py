"""Pure routing: addresses, the directory snapshot, Odoo's resolver chain. No I/O, no gateway imports."""
